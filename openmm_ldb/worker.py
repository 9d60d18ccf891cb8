"""Entry point of LDBReporter's worker process: ``python -m openmm_ldb.worker SPOOL``.

Kept tiny on purpose: the process sets its scheduling priority and thread counts (from the
environment the reporter gives it) before torch is imported, then runs :func:`spool.drain`.
"""

import sys

if __name__ == "__main__":
    from openmm_ldb.spool import worker_main

    sys.exit(worker_main())
