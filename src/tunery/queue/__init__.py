"""The job state machine (states.py) and the queue: claiming (claim.py) and stale-job recovery."""
