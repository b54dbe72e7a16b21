"""Wire models (pydantic), named as in Together's OpenAPI; separate from the tables."""
