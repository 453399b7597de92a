"""The spool: the contract between the gateway and the workers.

Pipeline state lives on disk, one folder per job state (:mod:`spool.store`), each job with its
manifest (:mod:`spool.manifest`); work is handed over by task name through Celery
(:mod:`spool.broker`); :mod:`spool.report` reads the states back for people. The gateway and the
workers import this package; it imports neither of them, nor torch.
"""
