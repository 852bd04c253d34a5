"""The ``deepcurvature`` command line."""
