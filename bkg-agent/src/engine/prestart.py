# The loader of a prestarted Python (engine/prestart.rs): run as `python3 -c` when a pool
# sandbox is prepared, it waits for its run's order and then runs the script as `python3 FILE`
# would. Why it is built the way it is: docs/testing.md, "The zygote".
def _bkg_start():
    import sys
    before = set(sys.modules)
    # The '' of `-c`: nothing of the working directory is imported, and it is not bare's.
    del sys.path[0]
    cache = dict(sys.path_importer_cache)
    import _ctypes, functools, gc, itertools, operator, os

    # The C types and functions needed, made as the ctypes package makes them (`pythonapi`,
    # `CDLL(None, use_errno=True)`) but from _ctypes alone: importing the package around it
    # would cost more CPU than the rest of the loader together.
    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class c_void_p(_ctypes._SimpleCData):
        _type_ = "P"

    class c_char_p(_ctypes._SimpleCData):
        _type_ = "z"

    class this_process:
        _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

    class python_api(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI
        _restype_ = c_int

    class c_function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = c_int

    run_file = python_api(("PyRun_SimpleFileExFlags", this_process))
    run_file.argtypes = [c_void_p, c_char_p, c_int, c_void_p]
    exit_now = python_api(("Py_Exit", this_process))
    exit_now.argtypes = [c_int]
    fopen = c_function(("fopen", this_process))
    fopen.argtypes = [c_char_p, c_char_p]
    fopen.restype = c_void_p

    # What the interpreter's start made is frozen (moved out of the collector's generations):
    # the collection at the script's exit then walks only what the script made, which takes
    # about 1 ms off each run. What the script can tell: docs/security.md, "prestarted interpreter".
    gc.freeze()
    # The script's globals must not be a frozen dict: the collector takes a frozen object for a
    # root, so the script's cycles held by its globals would never be finalized at exit. So it
    # runs in a new `__main__`, with what the interpreter's start put in the first one.
    main = type(sys)("__main__")
    main.__dict__.update((name, value) for name, value in vars(sys.modules["__main__"]).items() if name != "_bkg_start")
    sys.modules["__main__"] = main
    if ZYGOTE:
        # The zygote (engine/zygote.rs): its library's loop returns only in a fork that is a
        # sandbox's code, locked down, its order and report pipes at ORDER_FD and READY_FD;
        # in the zygote itself, once its generation is over. The interpreter's own after-fork
        # work is done then, as os.fork does it.
        site = sys.modules.get("site")
        if site is not None and getattr(site, "USER_SITE", None) in sys.path:
            # The host's user site-packages under HOME would be on sys.path, as no sandbox's are.
            sys.stderr.write(f"{site.USER_SITE} exists on the host: no zygote\n")
            os._exit(3)

        class zygote:
            _handle = _ctypes.dlopen(ZYGOTE, _ctypes.RTLD_LOCAL)

        serve = python_api(("bkg_zygote_serve", zygote))
        serve.argtypes = []
        served = serve()
        if served != 0:
            os._exit(served - 1)
        after_fork = python_api(("PyOS_AfterFork_Child", this_process))
        after_fork.argtypes = []
        after_fork.restype = None
        after_fork()
    os.write(READY_FD, b"1")
    os.close(READY_FD)
    order = bytearray()
    while chunk := os.read(ORDER_FD, 65536):
        order += chunk
    os.close(ORDER_FD)
    # Every field ends with a NUL: "1" when stderr is to be stdout's pipe, the working
    # directory, the count of arguments, the arguments (the interpreter's path first), then
    # the environment as KEY=VALUE.
    fields = os.fsdecode(bytes(order)).split("\0")[:-1]
    if fields[0]:
        os.dup2(1, 2)
    count = int(fields[2])
    argv, environ = fields[3 : 3 + count], fields[3 + count :]
    os.chdir(fields[1])
    os.environ.clear()
    for item in environ:
        key, _, value = item.partition("=")
        os.environ[key] = value
    script = argv[1]
    sys.argv[:] = argv[1:]
    sys.orig_argv[:] = argv
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))

    file = fopen(os.fsencode(script), b"rbe")
    if not file:
        error = _ctypes.get_errno()
        sys.stderr.write(f"{argv[0]}: can't open file {script!r}: [Errno {error}] {os.strerror(error)}\n")
        sys.stderr.flush()
        os._exit(2)

    def after(status):
        # Once the script is over: what bare python3 does next, joining its threads, and
        # exit status 1 for an uncaught exception (KeyboardInterrupt ends by SIGINT by itself).
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        if status != 0 and getattr(sys, "last_type", None) is not KeyboardInterrupt:
            exit_now(1)

    # Python 3.11 counts each call into C towards the recursion limit, so the script, run from
    # the call into PyRun_SimpleFileExFlags, would have one frame less before RecursionError
    # than bare python3 gives it. Its thread's remaining depth (PyThreadState's
    # recursion_remaining, written only once it and the limit beside it read as expected) is
    # given that frame while the script runs, and it is taken back after; the limit
    # (`sys.getrecursionlimit()`) is untouched.
    give, take = iter(()), iter([None])
    if sys.version_info[:2] == (3, 11):
        thread_state = python_api(("PyThreadState_Get", this_process))
        thread_state.restype = c_void_p
        state = thread_state()
        remaining, limit = c_int.from_address(state + 32), c_int.from_address(state + 36)
        if limit.value == sys.getrecursionlimit() and 0 < limit.value - remaining.value < 16:
            # Each write is made inside the call to setattr, which the interpreter counts on
            # entry and gives back on return: at the depth of the shutdown (none), the script's
            # call then starts from the limit, as bare python3's script does.
            write = functools.partial(setattr, remaining, "value")
            give = map(write, [limit.value])
            take = map(write, map(functools.partial(operator.add, -1), itertools.starmap(sys.getrecursionlimit, [()])))

    # Interpreter shutdown calls `threading._shutdown()` from C before anything else. Built of
    # C callables only (`list` and `partial` count no depth), this one runs the script with no
    # Python frame below it.
    unhook = map(functools.partial(sys.modules.pop, "threading"), [None])
    ran = itertools.starmap(run_file, [(file, os.fsencode(script), 1, None)])
    run = map(after, map(operator.itemgetter(0), zip(ran, take)))
    stand_in = type(sys)("threading")
    stand_in._shutdown = functools.partial(list, itertools.chain(unhook, give, run))
    for name in set(sys.modules) - before:
        del sys.modules[name]
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(cache)
    sys.path_importer_cache[script] = None
    sys.modules["threading"] = stand_in


_bkg_start()
del _bkg_start
