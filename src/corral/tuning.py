"""corral's tuning knobs: every number chosen for speed or responsiveness, and why.

Limits the protocol sets (batch sizes, header sizes, record sizes) live with
the protocol (``wire/``); settings a user chooses (heartbeat, retries...) in
``config.py``.  What is here is ours to tune: change one, and measure
(``benchmarks/``).  docs/performance.md tells the story behind the numbers.
"""

# -- telling the broker: starts, credit, pipelines --------------------------------------

# A task that ends sooner than STARTED_DELAY is reported by its RESULT alone; a longer one
# gets a STARTED message once this much time has passed, so that its future shows as
# running. Saves two messages per short task (timing.py).
STARTED_DELAY = 0.002
# A worker holds enough tasks for this many seconds of work, judged by how long its
# recent tasks took: short tasks stream in large batches, long ones stay spread over
# the workers.
CREDIT_HORIZON = 0.01
# Tasks are queued behind the running one in its process (where they can no longer be
# cancelled) only while tasks take less than PIPELINE_TASK_TIME on average: that matters
# only for long ones.  At most PIPELINE_TASKS of them, and PIPELINE_BYTES of payload: far
# below the socket buffer, so the supervisor never blocks writing to its task process.
PIPELINE_TASK_TIME = 0.002
PIPELINE_TASKS = 256
PIPELINE_BYTES = 64 << 10
SMOOTHING = 0.2  # the weight of the newest sample in the moving averages of task times (timing.py)

# -- waiting: poll, then sleep ------------------------------------------------------------

# A waiting caller and a lane's task process poll for up to SPIN seconds before they sleep
# (wire/poller.py: Spin says why).
SPIN = 200e-6
# A broker owing messages to a peer whose pipe is full tries again this often (broker/backlog.py).
BACKLOG_RETRY = 0.005
LINGER = 0.002  # seconds the I/O thread leaves the loop to callers after the last one left it (client/leading.py)

# -- moving bytes -----------------------------------------------------------------------

# Socket buffers of the socket pairs to a local worker (STREAM_BUFFER) and to a task process
# (CHANNEL_BUFFER): big enough that a burst of small messages (a pipeline of small tasks, a
# burst of results) never makes a writer wait for its reader.
STREAM_BUFFER = 4 << 20
CHANNEL_BUFFER = 4 << 20
# Reads of a stream land in one buffer per thread, then only what arrived is appended to the
# stream's own buffer: a fresh STREAM_READ_CHUNK bytes object per read would be a mmap, a
# mremap and a munmap (glibc maps allocations this large), three system calls per message.
STREAM_READ_CHUNK = 256 << 10
LARGE_MESSAGE = 1 << 20  # a stream message this large is read straight into a buffer of its own
# A task process reads small messages this many bytes at a time; one of this size or more
# goes straight into a writable buffer of its own (it can hold an out-of-band buffer).
CHANNEL_READ_CHUNK = 64 << 10
# Payload frames smaller than PACK_BELOW travel packed together in one frame: each ZeroMQ
# frame costs both sides a few microseconds, a packed one only its bytes.
PACK_BELOW = 64 << 10
# Buffers smaller than OOB_THRESHOLD are cheaper to copy into the pickle than to send as a
# frame of their own.
OOB_THRESHOLD = 64 << 10
# Buffers of SHM_MIN_BYTES or more go between an executor and its own workers as files in
# tmpfs, mapped copy-on-write (wire/shm.py): a 64 MiB array is then copied once, not eight times.
SHM_MIN_BYTES = 1 << 20
# Frames of SPLIT_BYTES or more cross a CurveZMQ link in chunks of CHUNK_BYTES, so that one
# side encrypts while the other decrypts (wire/chunks.py).
SPLIT_BYTES = 4 << 20
CHUNK_BYTES = 1 << 20
# Very short tasks of one lane batch answer together: while a task process's tasks take less
# than RESULT_BATCH_TASK on average, a result waits for the next ones of its batch until it is
# RESULT_BATCH_TIME old or they add up to RESULT_BATCH_BYTES (each message costs the broker's
# thread a wake-up and a header to parse).  A lone task answers at once.
RESULT_BATCH_TASK = 100e-6
RESULT_BATCH_TIME = 0.001
RESULT_BATCH_BYTES = 64 << 10

# A persistent task process measures the peak memory of tasks that ran this long or longer
# (worker/tasknotes.py): ~2 us of system calls, a few per cent of what a no-op costs in a burst,
# under 0.2% of a task this long.
PEAK_MEMORY_TASK = 0.001

# -- the broker ------------------------------------------------------------------------------

SMALL_FRAME = 64 << 10  # queued frames below this are kept as bytes; larger ones stay zero-copy ZeroMQ frames
INTERNED = 1024  # distinct first frames (pickled functions) of queued tasks stored once
# Messages a ROUTER's drain handles in one turn of the loop: then the turn dispatches, sends and
# heartbeats, so that a flood from some peers (a SUBMIT is up to 2,000 tasks) cannot keep the
# others waiting for their heartbeats past their liveness.
DRAIN_LIMIT = 1000
# Messages a peer may have waiting in a broker's ROUTER before ZeroMQ stops reading its connection
# (ZeroMQ's default is 1,000): a client sending tasks of 1 MiB to a broker that spills them at the
# disk's pace would otherwise park a GiB there, beyond the broker's memory budget (broker/spill.py).
ROUTER_RCVHWM = 100

# -- the client ------------------------------------------------------------------------------

# map's default read-ahead grows with max_workers up to these, so that it stays lazy however many
# workers are claimed (max_workers=1_000_000 with address= would otherwise read 32 million items).
MAP_WINDOW = 4096  # tasks
MAP_CHUNK_WINDOW = 1024  # chunks

# -- workers ---------------------------------------------------------------------------------

LANE_STOP_CHECK = 0.001  # seconds between looks at a lane's page for a task to stop when it begins
PARENT_CHECK = 0.1  # seconds between checks that our parent lives (it also sends a signal when it dies)
READY_TRIES = 3  # task processes that may die before saying READY, when there is no initializer to blame
# A worker moves into a cgroup of its own (worker/containment.py) this long after it started:
# making a cgroup and moving a process into it take ~10 ms, which would delay the first task.
CGROUP_DELAY = 0.2
# A fresh worker's template imports each new function ahead (worker/template.py): at most
# WARM_MAX of them, none larger than WARM_BYTES pickled, each given IMPORT_PATIENCE seconds.
# A spare forked before an import that took over SLOW_IMPORT is replaced by a warm one.
WARM_MAX = 64
WARM_BYTES = 1 << 20
IMPORT_PATIENCE = 60.0
SLOW_IMPORT = 0.001
# The template runs a task process's whole path WARM_UP_ROUNDS times before its first fork, so
# that CPython's specialisation of that code happens there once, not in every task process.
WARM_UP_ROUNDS = 32
COLLECT_EVERY = 0.05  # seconds without requests before the template collects the task processes that exited
COLLECT_BATCH = 16  # ... or every this many pids to collect
# The template backs a 2 MiB range of its heap with a huge page if this much of it is in memory
# already (the rest of the huge page is memory it did not use).
HUGE_PAGE_FILL = 0.75

# -- progress (reporting.py, client/progress.py) ---------------------------------------------

# A task process sends its task's progress reports (corral.report) at most once per REPORT_INTERVAL
# seconds, the latest one; a progress bar redraws at most once per BAR_INTERVAL seconds.
REPORT_INTERVAL = 0.25
BAR_INTERVAL = 0.1
