"""Local stand-ins for external services the product talks to; test fixtures only, never imported by the product."""
