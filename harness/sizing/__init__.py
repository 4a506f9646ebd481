"""Which board a load needs: predicted from a loader's declared bounds (:mod:`.predict`), measured by bisecting a
board's RAM (:mod:`.threshold_search`)."""
