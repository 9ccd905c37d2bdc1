"""The logic behind the user-side tools, `fastmta route` and `fastmta sendmail`.

The command modules (fastmta/commands/route.py, sendmail.py) only parse flags and call in
here.  Nothing in this package keeps state between runs or touches the spool: routing and
delivery go through fastmta.delivery (Router, MXResolver, SMTPPool), and a message for the
queue goes to the running `fastmta serve` over SMTP, like any other client's.
"""
