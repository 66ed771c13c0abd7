package tartarus

import (
	"errors"
	"reflect"
	"testing"
)

func TestDrainReportRecord(t *testing.T) {
	rep := NewDrainReport("n1")
	for _, o := range []struct {
		id    string
		moved bool
		err   error
	}{
		{"sb-c", false, nil},
		{"sb-b", true, nil},
		{"sb-a", false, nil},
		{"sb-d", true, errors.New("hibernate: no disk")},
	} {
		rep.Record(o.id, o.moved, o.err)
	}
	rep.Sort()
	want := &DrainReport{Node: "n1", Ended: []string{"sb-a", "sb-c"}, Moved: []string{"sb-b"},
		Failed: map[string]string{"sb-d": "hibernate: no disk"}}
	if !reflect.DeepEqual(rep, want) {
		t.Fatalf("report = %+v, want %+v", rep, want)
	}
}
