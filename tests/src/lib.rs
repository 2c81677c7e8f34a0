//! Shared helpers for the integration tests: paths of the built binaries and the mpirun
//! command the project itself uses.
