// An uncaught error: the stack must name this file and these lines, in every mode.
"use strict";
function inner(value) {
  if (value === 0) throw new RangeError("no zero");
  return 10 / value;
}
function outer() {
  return inner(0);
}
console.error("before");
outer();
