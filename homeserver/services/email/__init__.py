"""Email: the SMTP client (``mailer``) and the messages we send (``messages``)."""
