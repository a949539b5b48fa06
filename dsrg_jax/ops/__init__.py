"""Pure, jit-able operations: no config objects, no I/O."""
