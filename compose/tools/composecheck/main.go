// composecheck loads a compose file exactly as `docker compose config` does
// (compose-go: schema validation, interpolation, normalization, consistency
// checks) and prints the resolved model as JSON on stdout. It exists because
// the machines that run scripts/check-deploy.sh have the docker CLI but no
// compose plugin and no engine; where `docker compose` is available the
// script uses that instead.
//
//	go run . -f ../../docker-compose.yml > resolved.json
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	var files multiFlag
	flag.Var(&files, "f", "compose file (repeatable)")
	flag.Parse()
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "usage: composecheck -f compose.yml [-f override.yml]")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithConsistency(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
	os.Stdout.Write([]byte("\n"))
}

type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
