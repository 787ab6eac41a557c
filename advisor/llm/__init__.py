"""Generative LLM planning: architecture, precision, memory, performance, simulation."""
