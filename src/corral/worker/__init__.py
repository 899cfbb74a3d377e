"""The worker role: a supervisor (``supervisor.py``) that takes tasks from a broker and runs
each in a task process (``task_process.py``, ``execution.py``), forked from a template in fresh
mode (``template.py``), with what the task starts contained (``containment.py``).
``python -m corral.worker`` starts one (``main.py``)."""
