"""Camera poses: maths and metrics (:mod:`.maths`), start poses (:mod:`.starts`), pose files (:mod:`.files`)."""
