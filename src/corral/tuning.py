"""corral's tuning knobs: every number chosen for speed or responsiveness, and why.

Limits the protocol sets (batch sizes, header sizes, record sizes) live with
the protocol (``wire/``); settings a user chooses (heartbeat, retries...) in
``config.py``.  What is here is ours to tune: change one, and measure
(``benchmarks/``).  docs/performance.md tells the story behind the numbers.
"""

# When workers (or, for a lane, the broker) report starts and how many tasks they hold.
# A task that ends sooner than STARTED_DELAY is reported by its RESULT alone; a longer one
# gets a STARTED message once this much time has passed, so that its future shows as
# running. Saves two messages per short task.
STARTED_DELAY = 0.002
# A worker holds enough tasks for this many seconds of work, judged by how long its
# recent tasks took: short tasks stream in large batches, long ones stay spread over
# the workers.
CREDIT_HORIZON = 0.01
# Tasks are queued behind the running one in its process (where they can no longer be
# cancelled) only while tasks take less than PIPELINE_TASK_TIME on average: that matters
# only for long ones.  At most PIPELINE_TASKS of them.
PIPELINE_TASK_TIME = 0.002
PIPELINE_TASKS = 256

# A waiting caller and a lane's task process poll for up to SPIN seconds before they sleep.
SPIN = 200e-6
