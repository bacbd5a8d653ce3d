"""Answer generation: a Generator protocol, the extractive answerer, LangChain LLM backends."""
