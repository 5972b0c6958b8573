"""The operator console: server-rendered pages (Jinja2) under ``/console``, refreshed by a
small script of our own (``static/console.js``) that polls each page's live part."""
