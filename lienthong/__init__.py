"""lienthong: a connector hub for provincial e-government data exchange (LGSP/NDXP style)."""
