"""Pod sandboxes: the index, the lifecycle steps and their recovery (PodService in service.py is the
entry); kernel pieces live in sandbox/."""
