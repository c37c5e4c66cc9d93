"""The neural proxy (SPEC 3.2): a small byte LM (M1) + arithmetic coding with equal-information windows."""
