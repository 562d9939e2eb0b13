# A string's hash depends on the seed the interpreter drew at start: it differs from run to run
# unless two runs share one interpreter's start.
print("hash", hash("bkg"))
