"""Pure data contracts shared by every stage: states, messages, file formats. No I/O."""
