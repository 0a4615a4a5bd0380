"""The HTTP side: the application factory, the edge and request middleware, and the routes."""
