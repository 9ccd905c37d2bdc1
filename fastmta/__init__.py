"""fastmta: a fast, durable SMTP mail transfer agent with a Cython core."""

__version__ = "0.1.0"
