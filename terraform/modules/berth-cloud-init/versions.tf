terraform {
  # No provider: this module is templatefile() and outputs only, so it applies offline.
  required_version = ">= 1.5.0"
}
