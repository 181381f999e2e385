"""Plumbing every stage shares: processes and devices (`distributed`), logging (`logger`), mixed precision
(`precision`), checkpoint reading (`checkpoint_io`), atomic files (`fileio`), errors (`errors`) and the
Ctrl-C / SIGTERM stop (`stop_request`). Nothing here knows about MoCo, Detectron2 or the results tables."""
