//! READ and WRITE on files that are not regular files (FIFOs, devices), and other filesystem edge cases.
