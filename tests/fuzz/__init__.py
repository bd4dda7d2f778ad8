"""The CRI fuzz run: requests generated from the API's descriptors against a live daemon (issue 13)."""
