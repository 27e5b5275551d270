"""Boot policy: the one place that decides what a booting machine gets."""
