# The interpreter of a bkg session (bkg-agent/src/service/sessions.rs): reads one JSON request a
# line on stdin ({"code", "execution"}), runs it in one namespace kept between executions, and
# answers with events, one JSON object a line after \x1e, on its stdout.
import ast, base64, io, json, linecache, os, signal, sys, sysconfig, traceback

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", "/tmp/.bkg-matplotlib")
# Ctrl-C reaches only an execution: between them it is ignored, so it can never cut a request
# line in half while it is read.
signal.signal(signal.SIGINT, signal.SIG_IGN)
_proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
_requests = sys.stdin
sys.stdin = open(os.devnull)


def _send(event):
    _proto.write("\x1e" + json.dumps(event) + "\n")
    _proto.flush()


# Characters of output in one event at most.
_STREAM_CHUNK = 65536


class _Stream(io.TextIOBase):
    # What code that writes bytes or encodes by hand asks of a text stream (found by a new-user
    # trial: `sys.stdout.buffer` raised, `sys.stdout.encoding` was None).
    encoding = "utf-8"
    errors = "strict"

    def __init__(self, stream):
        self._stream = stream
        self.buffer = _Bytes(self)

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        # A long write goes as several events: the agent holds an event's line whole until it ends.
        for at in range(0, len(text), _STREAM_CHUNK):
            _send({"type": "stream", "name": self._stream, "text": text[at:at + _STREAM_CHUNK]})
        return len(text)


class _Bytes(io.RawIOBase):
    """`sys.stdout.buffer`: bytes as UTF-8 text (events carry text), a character split across
    writes kept whole, bytes that are not UTF-8 replaced."""

    def __init__(self, text):
        import codecs
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self):
        return True

    def write(self, data):
        self._text.write(self._decoder.decode(bytes(data)))
        return len(data)


sys.stdout = _Stream("stdout")
sys.stderr = _Stream("stderr")


def _bundle(value):
    data = {"text/plain": repr(value)}
    for method, mime in (("_repr_html_", "text/html"), ("_repr_svg_", "image/svg+xml"),
                         ("_repr_png_", "image/png"), ("_repr_json_", "application/json")):
        represent = getattr(value, method, None)
        if callable(represent):
            try:
                shown = represent()
            except Exception:
                continue
            if isinstance(shown, bytes):
                shown = base64.b64encode(shown).decode()
            if shown is not None:
                data[mime] = shown
    return data


def display(value=None, data=None):
    """Shows a value (its text, HTML, SVG, PNG or JSON form), or `data`: {MIME type: content}."""
    bundle = dict(data) if data is not None else _bundle(value)
    for mime, content in list(bundle.items()):
        if isinstance(content, bytes):
            bundle[mime] = base64.b64encode(content).decode()
    _send({"type": "display", "data": bundle})


def _show_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        png = io.BytesIO()
        figure.savefig(png, format="png")
        _send({"type": "display", "data": {"image/png": base64.b64encode(png.getvalue()).decode(),
                                           "text/plain": repr(figure)}})
    pyplot.close("all")


_namespace = {"__name__": "__main__", "__builtins__": __builtins__, "display": display}


_STDLIB = (sysconfig.get_paths()["stdlib"] + os.sep, "<frozen ")


def _user_frames(tb):
    # The runner's own frames come first: drop them, so the traceback starts at the cell.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    # And may come last (a Ctrl-C while the cell's output was being sent, a value `display`
    # could not send), with the standard library's below them: the traceback ends at the
    # user's code. What the user's code calls of the standard library itself stays.
    runner = _user_frames.__code__.co_filename
    last_of_user, in_runner, node = None, False, tb
    while node is not None:
        filename = node.tb_frame.f_code.co_filename
        if filename == runner:
            in_runner = True
        elif not filename.startswith(_STDLIB):
            in_runner = False
            last_of_user = node
        elif not in_runner:
            last_of_user = node
        node = node.tb_next
    if last_of_user is not None:
        last_of_user.tb_next = None
    return tb


def _run(code, execution):
    filename = "<cell %d>" % execution
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    status = "ok"
    try:
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            exec(compile(tree, filename, "exec"), _namespace)
            value = None if last is None else eval(compile(last, filename, "eval"), _namespace)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if value is not None:
            _namespace["_"] = value
            _send({"type": "result", "data": _bundle(value)})
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        lines = traceback.format_exception(type(error), error, _user_frames(error.__traceback__))
        _send({"type": "error", "name": type(error).__name__, "message": str(error), "traceback": lines})
    try:
        _show_figures()
    except Exception as error:
        _send({"type": "stream", "name": "stderr", "text": "figures not shown: %s\n" % error})
    _send({"type": "end", "status": status, "execution": execution})


while True:
    line = _requests.readline()
    if not line:
        break
    try:
        request = json.loads(line)
    except ValueError:
        continue
    _run(request["code"], request["execution"])
