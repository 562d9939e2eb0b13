# What runs as the interpreter shuts down after the script: finalizers of the script's objects,
# cycles among them included, in the order the interpreter runs them. An interpreter started
# ahead keeps what its own start made out of the collector (engine/prestart.py, gc.freeze); what
# the script made must still be collected and finalized as bare python3 does it.
import gc
import weakref


class Noisy:
    def __init__(self, name):
        self.name = name

    def __del__(self):
        print("finalized", self.name, flush=True)


def watched(name):
    print("callback for", name, flush=True)


kept = Noisy("a cycle a global still holds")
kept.me = kept
# Automatic collection off: the garbage cycle below waits for the collection at shutdown.
gc.disable()
lost = Noisy("a garbage cycle")
lost.me = lost
del lost
target = Noisy("a weakly referenced object")
watch = weakref.ref(target, lambda ref: watched("the weakly referenced object"))
print("script done", gc.isenabled(), flush=True)
