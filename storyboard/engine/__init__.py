"""Running a stage's per-record work: in process (the default) or as a Ray Data pipeline across machines.

``work`` what a stage hands the engine (the flags' settings, the work per job) · ``run`` the engine
(in process, worker processes, or the crossing to Ray) · ``on_ray`` the Ray Data pipeline (imported only
when ``--ray-address`` is given). See docs/scaling.md.
"""
