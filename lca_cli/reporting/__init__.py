"""The HTML report and the comparison of two stores: gathering, figures, captions."""
