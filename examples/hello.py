import sys, platform
print("hello from python", platform.python_version())
