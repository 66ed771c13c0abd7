package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

// newSandboxQuarantineCmd quarantines a sandbox by hand.
func newSandboxQuarantineCmd(o *clientOptions) *cobra.Command {
	var reason, note string
	var files []string
	cmd := &cobra.Command{
		Use: "quarantine ID", Short: "Quarantine a sandbox: its owner loses exec and files, examiners keep them", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			body := &api.QuarantineBody{Reason: tartarus.QuarantineReason(reason)}
			if note != "" {
				body.Evidence = append(body.Evidence, api.EvidenceBody{Type: tartarus.EvidenceNote, Description: note})
			}
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				body.Evidence = append(body.Evidence, api.EvidenceBody{Type: tartarus.EvidenceNote, Description: filepath.Base(f), Data: b})
			}
			rec, err := c.Quarantine(cmd.Context(), args[0], body)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rec)
			}
			return printRecord(cmd.OutOrStdout(), rec)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", string(tartarus.QuarantineManualFlag), "why: one of "+reasonList())
	cmd.Flags().StringVar(&note, "note", "", "a note kept as evidence")
	cmd.Flags().StringSliceVar(&files, "evidence", nil, "a file kept as evidence (repeat)")
	o.addOutputFlag(cmd)
	return cmd
}

func reasonList() string {
	var s []string
	for _, r := range tartarus.QuarantineReasons {
		s = append(s, string(r))
	}
	return strings.Join(s, ", ")
}

func printRecord(w io.Writer, rec *tartarus.QuarantineRecord) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "sandbox\t%s\nstatus\t%s\nreason\t%s\nquarantined\t%s by %s\n", rec.SandboxID, rec.Status, rec.Reason,
		rec.QuarantinedAt.Format(time.RFC3339), rec.QuarantinedBy)
	if rec.Trigger != "" {
		fmt.Fprintf(tw, "trigger\t%q\n", rec.Trigger)
	}
	fmt.Fprintf(tw, "network\t%s\nheld until\t%s\nexaminations\t%d\n", rec.NetworkMode, rec.ExpiresAt.Format(time.RFC3339), rec.ExaminationCount)
	if rec.Approval != nil {
		fmt.Fprintf(tw, "released by\t%s (%q), conditions %q", rec.Approval.ApprovedBy, rec.Approval.Reason, rec.Approval.Conditions)
		if rec.Approval.ExpiresAt != nil {
			fmt.Fprintf(tw, " until %s", rec.Approval.ExpiresAt.Format(time.RFC3339))
		}
		fmt.Fprintln(tw)
	}
	for _, n := range rec.Notes {
		fmt.Fprintf(tw, "note\t%q\n", n)
	}
	fmt.Fprintln(tw, "EVIDENCE\tTYPE\tSOURCE\tSIZE\tCHECKSUM")
	for _, e := range rec.Evidence {
		sum := e.Checksum
		if e.Ref != "" {
			sum = "kept as " + e.Ref
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", e.ID, e.Type, e.Source, e.Size, sum)
	}
	return tw.Flush()
}

func printReport(w io.Writer, rep *tartarus.ExaminationReport) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "report\t%s\nexamined\t%s by %s\nrisk\t%.3f\nrecommendation\t%s\n", rep.ID, rep.ExaminedAt.Format(time.RFC3339),
		rep.ExaminedBy, rep.RiskScore, rep.Recommendation)
	fmt.Fprintln(tw, "SEVERITY\tCATEGORY\tSOURCE\tEVIDENCE\tFINDING")
	for _, f := range rep.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%q\n", f.Severity, f.Category, f.Source, f.EvidenceID, f.Description)
	}
	return tw.Flush()
}

// newQuarantineCmd lists, shows, examines, releases and destroys
// quarantined sandboxes, downloads their evidence and sets the policy.
func newQuarantineCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "quarantine", Short: "Quarantined sandboxes: list, show, examine, approve a release, destroy, evidence, policy"}
	var all bool
	var status, tenant string
	ls := &cobra.Command{
		Use: "ls", Short: "List held sandboxes (--all: every quarantine)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			q := url.Values{}
			if all {
				q.Set("all", "1")
			}
			if status != "" {
				q.Set("status", status)
			}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			list, err := c.ListQuarantined(cmd.Context(), q)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			w := newTable(cmd.OutOrStdout())
			fmt.Fprintln(w, "SANDBOX\tTENANT\tSTATUS\tREASON\tBY\tSINCE\tEXAMINED\tEVIDENCE")
			for _, r := range list {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.SandboxID, r.Tenant, r.Status, r.Reason, r.QuarantinedBy,
					r.QuarantinedAt.Format(time.RFC3339), r.ExaminationCount, len(r.Evidence))
			}
			return w.Flush()
		},
	}
	ls.Flags().BoolVar(&all, "all", false, "also released and destroyed")
	ls.Flags().StringVar(&status, "status", "", "active, examining, released or destroyed")
	ls.Flags().StringVar(&tenant, "tenant", "", "another tenant's (\"*\": every tenant's; needs the examiner role)")
	o.addOutputFlag(ls)

	show := &cobra.Command{
		Use: "show ID", Short: "Show a sandbox's quarantine and its examination reports", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			d, err := c.QuarantineDetail(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			if err := printRecord(cmd.OutOrStdout(), d.Record); err != nil {
				return err
			}
			for _, rep := range d.Reports {
				fmt.Fprintln(cmd.OutOrStdout())
				if err := printReport(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			}
			return nil
		},
	}
	o.addOutputFlag(show)

	examine := &cobra.Command{
		Use: "examine ID", Short: "Examine a held sandbox: findings, risk score, recommendation", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			rep, err := c.Examine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			return printReport(cmd.OutOrStdout(), rep)
		},
	}
	o.addOutputFlag(examine)

	var reason string
	var conditions []string
	var expires time.Duration
	approve := &cobra.Command{
		Use: "approve ID", Short: "Approve a held sandbox's release (not by whoever quarantined it or acted in it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			rec, err := c.ApproveRelease(cmd.Context(), args[0], &api.ApproveBody{Reason: reason, Conditions: conditions, ExpiresInS: int(expires.Seconds())})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rec)
			}
			return printRecord(cmd.OutOrStdout(), rec)
		},
	}
	approve.Flags().StringVar(&reason, "reason", "", "why it may go")
	approve.Flags().StringSliceVar(&conditions, "condition", nil, `a condition kept until --expires: "network none", "network restricted" or "network monitored"`)
	approve.Flags().DurationVar(&expires, "expires", 0, "how long the conditions hold (default 24h)")
	o.addOutputFlag(approve)

	destroy := &cobra.Command{
		Use: "destroy ID", Short: "End a held sandbox (reason policy_violation); its evidence is kept", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			rec, err := c.DestroyQuarantined(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", rec.SandboxID, rec.Status)
			return nil
		},
	}

	sleepCmd := func(use, short string, call func(context.Context, string) (*tartarus.QuarantineRecord, error), done string) *cobra.Command {
		return &cobra.Command{Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				rec, err := call(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s, %s\n", rec.SandboxID, done, rec.Status)
				return nil
			}}
	}
	hibernate := sleepCmd("hibernate", "Put a held sandbox to sleep; it stays held", func(ctx context.Context, id string) (*tartarus.QuarantineRecord, error) {
		c, err := o.client()
		if err != nil {
			return nil, err
		}
		return c.HibernateQuarantined(ctx, id)
	}, "hibernated")
	wake := sleepCmd("wake", "Wake a held sandbox; it is contained again", func(ctx context.Context, id string) (*tartarus.QuarantineRecord, error) {
		c, err := o.client()
		if err != nil {
			return nil, err
		}
		return c.WakeQuarantined(ctx, id)
	}, "woken")

	var outDir string
	evidence := &cobra.Command{
		Use: "evidence ID [EVIDENCE_ID...]", Short: "Download a quarantine's evidence into a directory, checking each checksum", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			d, err := c.QuarantineDetail(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if outDir == "" {
				outDir = "evidence-" + d.Record.SandboxID
			}
			if err := os.MkdirAll(outDir, 0o700); err != nil {
				return err
			}
			want := map[string]bool{}
			for _, id := range args[1:] {
				want[id] = true
			}
			for _, ev := range d.Record.Evidence {
				if len(want) > 0 && !want[ev.ID] {
					continue
				}
				if ev.Key == "" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\tkept as %s (not a download)\n", ev.ID, ev.Type, ev.Ref)
					continue
				}
				name, err := downloadEvidence(cmd, c, d.Record.SandboxID, &ev, outDir)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\t%s\tchecksum ok\n", ev.ID, ev.Type, ev.Source, name)
			}
			return nil
		},
	}
	evidence.Flags().StringVarP(&outDir, "out", "o", "", "directory (default evidence-ID)")

	policy := &cobra.Command{Use: "policy", Short: "Show or set the quarantine policy"}
	policyShow := &cobra.Command{
		Use: "show", Short: "Show the policy in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			p, err := c.QuarantinePolicy(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), p)
		},
	}
	policySet := &cobra.Command{
		Use: "set FILE", Short: "Replace the policy with FILE (YAML or JSON; see docs/quarantine.md)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			p, err := typhon.ParsePolicyFile(b)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			out, err := c.SetQuarantinePolicy(cmd.Context(), p)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "policy version %d: %d triggers\n", out.Version, len(out.AutoTriggers))
			return nil
		},
	}
	policy.AddCommand(policyShow, policySet)
	cmd.AddCommand(ls, show, examine, approve, destroy, hibernate, wake, evidence, policy)
	return cmd
}

// downloadEvidence writes one piece into dir and checks its sha256 against
// the record's checksum; a mismatch removes the file.
func downloadEvidence(cmd *cobra.Command, c *client.Client, sandboxID string, ev *tartarus.Evidence, dir string) (string, error) {
	rc, _, err := c.Evidence(cmd.Context(), sandboxID, ev.ID)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	name := filepath.Join(dir, ev.ID+"-"+string(ev.Type)+evidenceExt(ev.Type))
	f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != ev.Checksum {
			err = fmt.Errorf("evidence %s: checksum %s, the record says %s", ev.ID, got, ev.Checksum)
		}
	}
	if err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("download evidence %s: %w", ev.ID, err)
	}
	return name, nil
}

func evidenceExt(t tartarus.EvidenceType) string {
	switch t {
	case tartarus.EvidenceResourceSpike, tartarus.EvidenceExecHistory, tartarus.EvidenceNetworkLog, tartarus.EvidenceFileAccess:
		return ".json"
	}
	return ".txt"
}
