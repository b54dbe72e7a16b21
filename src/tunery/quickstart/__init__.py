"""The quickstart's bundled dataset and its before/after evaluation (``tunery quickstart``)."""
