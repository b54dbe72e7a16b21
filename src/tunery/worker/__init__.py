"""The worker: the only code that knows both the store and training. It claims jobs, stages their
inputs, runs the training child process, relays its reports, packages outputs and finishes jobs."""
