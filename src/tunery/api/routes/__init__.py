"""Route modules, named after their URL segment."""
