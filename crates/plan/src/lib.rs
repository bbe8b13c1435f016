//! Pure import domain (being written).
