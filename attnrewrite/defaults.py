"""Sizes the stages use when the user gives none. The command line shows them in --help, so
this module imports nothing (no onnx, no torch: --help must stay fast)."""

VERIFY_SEQ_LEN = 11  # the parity run's length: deliberately unlike export lengths (8, 16, 128)
REPORT_SEQ_LEN = 64  # small models often have 64 positions: pass the target length
REPORT_BATCH = 2
