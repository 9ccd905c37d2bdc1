"""The outbound half: taking messages from the spool and delivering every recipient.

Next-hop choice lives in `routing` (local domains, transport map, relay host, MX lookup) over
`resolver` (the RFC 5321 5.1 MX walk with dnspython, cached, with a printable trace).  This package
imports the config, the spool and the protocol; nothing below it imports this package.
"""
