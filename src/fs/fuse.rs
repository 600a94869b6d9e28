//! The FUSE frontend (fuser): a thin adapter from fuser callbacks to [`super::StoreFs`].
