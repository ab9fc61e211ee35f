"""The operator console: ``/console`` in a browser shows every live call and lets an operator step in.

``feed`` pushes call events to open pages (through Redis when the store is Redis), ``access``
decides who may look, ``views`` serves the page, its data and its actions; the page itself is
plain static files in ``static/`` (no build step, no CDN): ``console.js`` (the feed, the
call list, one call), ``overview.js``, ``phone.js`` (the test softphone), ``charts.js`` (SVG).
"""
