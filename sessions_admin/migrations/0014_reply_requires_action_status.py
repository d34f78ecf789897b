# A reply paused for the client's local tool outputs (docs/api.md §6, §13) has its own status.
# Choices only: no change to the table.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_admin', '0013_turn_finish_function'),
    ]

    operations = [
        migrations.AlterField(
            model_name='reply',
            name='status',
            field=models.CharField(choices=[('in_progress', 'In Progress'), ('requires_action', 'Requires Action'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('interrupted', 'Interrupted')], default='in_progress', max_length=16),
        ),
    ]
