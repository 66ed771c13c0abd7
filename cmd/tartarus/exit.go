package main

import "errors"

// exitError makes the process exit with code and print nothing more, as
// `tartarus exec` does with the command's own exit code.
type exitError struct{ code int }

func (e exitError) Error() string { return "exit status" }

func asExit(err error, target *exitError) bool { return errors.As(err, target) }
