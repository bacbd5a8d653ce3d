"""Questions answered and logged: every answer with the chunks and versions that made it
(ask), and the chat route's follow-up handling (chat)."""
