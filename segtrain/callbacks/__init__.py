"""Lightning callbacks of segtrain (configured in ``configs/callbacks/``)."""
