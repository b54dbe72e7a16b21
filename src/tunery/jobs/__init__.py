"""What can be done to a fine-tuning job, below any front door: the Together API, the dashboard
and the CLI call these, so a job is cancelled, deleted or downloaded the same way whichever way
the user asked. Nothing here knows HTTP.

    lifecycle.py   cancel a job; delete an ended one with its stored artifacts
    downloads.py   the stored artifact a download request names, and its file name
"""
