//! Link emulator (being built).
