"""`csv-opener`, the command-line client of the CSV Opener API.

A separate top-level package: it talks to the API over HTTP only and never imports `chalicelib`
(nor does `chalicelib` import it), so the Lambda package stays app.py + chalicelib/.
"""

__version__ = "0.1.0"
