"""Running a stage's per-record work: in process (the default) or as a Ray Data pipeline across machines."""
